"""A small HTTP server and client pair, run as podman containers by the container tests (each
a ``python3 -c`` program in the responder image, which has Python and nothing else to start)."""

# argv: port. Answers every GET with 4 KiB, one thread per connection.
SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b"x" * 4096

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *a):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""

# argv: url, requests per second, seconds. Eight threads share the rate, each opening a new
# connection per request with short timeouts (a request stalled by a lost packet does not stall
# the others); stops by itself after the given time (a bounded loop, whatever happens to the test).
CLIENT = r"""
import sys, threading, time, urllib.request

url, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
THREADS = 8
end = time.monotonic() + seconds

def loop():
    while time.monotonic() < end:
        t = time.monotonic()
        try:
            urllib.request.urlopen(url, timeout=3).read()
        except Exception:
            pass
        time.sleep(max(0.0, THREADS / rate - (time.monotonic() - t)))

threads = [threading.Thread(target=loop) for _ in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""
