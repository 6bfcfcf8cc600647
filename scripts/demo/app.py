"""A small sample upstream for the demo: a product page with JSON, HTML and binary endpoints."""
import http.server
import json
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/productpage/logo"):
            self.reply(200, "image/png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
        elif self.path.startswith("/productpage"):
            page = "<html>\n<body>\n<h1>The Comedy of Errors</h1>\n<p>Wonderful! \u2605\u2605\u2605\u2605\u2605</p>\n</body>\n</html>\n"
            self.reply(200, "text/html; charset=utf-8", page.encode())
        else:
            self.reply(404, "text/plain", b"not found\n")

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        try:
            review = json.loads(body or b"{}")
        except ValueError:
            self.reply(400, "application/json", b'{"error":"invalid json"}')
            return
        out = {"accepted": True, "review": review, "id": 42}
        self.reply(201, "application/json", json.dumps(out).encode())

    def reply(self, status, ctype, body):
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
