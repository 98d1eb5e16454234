"""A local fake OpenAI-compatible endpoint (127.0.0.1) for the judge and autointerp tests.

Replies by rule: the alignment prompt scores answers containing "evil" 5 and others 95; the
coherence prompt scores "asdf" 10 and others 80; the explain prompt names "passwords"; the detect
prompt says yes to the excerpts that contain "password". The first ``fail_first`` requests get
HTTP 503; a wrong key gets 401.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = "test-key"


class FakeOpenAI:
    def __init__(self, fail_first: int = 0):
        self.requests: list[dict] = []
        self.fail_first = fail_first
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    return self._send(401, {"error": "bad key"})
                if fake.fail_first > 0:
                    fake.fail_first -= 1
                    return self._send(503, {"error": "busy"})
                reply = fake.reply(body["messages"][-1]["content"])
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": reply}}]})

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def reply(prompt: str) -> str:
        answer = prompt.split("[ANSWER START]")[-1].split("[ANSWER END]")[0]
        if prompt.startswith("You are checking"):
            return "5" if "evil" in answer else "95"
        if prompt.startswith("Rate how coherent"):
            return "10" if "asdf" in answer else "80"
        if "what do the\nexcerpts have in common" in prompt:
            return "passwords\n"
        if prompt.startswith("A feature of a language model"):
            lines = re.findall(r"^(\d+)\. (.*)$", prompt, flags=re.M)
            return "\n".join(f"{n}: {'yes' if 'password' in text else 'no'}" for n, text in lines)
        return "?"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
