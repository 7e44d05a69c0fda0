"""``socketserver.ThreadingMixIn``: a thread per request; each starts from the server's context.

Used by ``http.server.ThreadingHTTPServer`` and by the werkzeug/Flask threaded
development server (``werkzeug.serving.ThreadedWSGIServer``).

Read against ``Lib/socketserver.py`` of CPython 3.10-3.13 (identical ``ThreadingMixIn``)
and ``werkzeug/serving.py`` 3.1.

``serve_forever()`` accepts each connection and calls ``process_request``, which starts
``Thread(target=self.process_request_thread)``: the thread patch already carries a copy
of the ``serve_forever`` thread's context into every request thread.  That is the right
origin, and it is "the context of the thread that started the server":

* ``serve_forever()`` on the main thread (``app.run()``): the main thread's context;
* ``serve_forever()`` in a thread started after ``instrument()``: a copy of its
  starter's context, taken at ``start()`` (the thread patch again);
* no request code runs in the ``serve_forever`` thread (``finish_request`` runs in the
  request thread), so its context never holds a request's values, and each request
  starts from its own copy: request B never sees what request A set.

This entry only names the hop ``socketserver`` (span ``socketserver
process_request_thread``, a child of the span current in the ``serve_forever``
thread).  Excluding it (``CTXRELAY_EXCLUDE=socketserver``) names the hop ``Thread``
again; excluding ``threading`` stops the propagation itself.
"""

from __future__ import annotations

from ctxrelay.patching import Patch
from ctxrelay.runners._thread_roles import naming_threads

NAME = "socketserver"
RUNNER = "socketserver"


PATCHES = (Patch(NAME, "socketserver", "ThreadingMixIn.process_request", naming_threads(RUNNER)),)
