"""An OTLP/HTTP sink for the benchmarks' spans and log records: answers every
POST on 127.0.0.1:4318 with 200 and writes the number of exports so far to
the file given as the first argument, if any.
Usage: python3 bench/otlp-sink.py [COUNT_FILE]"""
import http.server
import sys

count_file = sys.argv[1] if len(sys.argv) > 1 else None
exports = 0


class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global exports
        self.rfile.read(int(self.headers.get("content-length", 0)))
        exports += 1
        if count_file:
            with open(count_file, "w") as f:
                f.write(str(exports))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", 4318), Sink).serve_forever()
