"""stock's tests. `devstack test stock` runs them in your copy, on the files
synced there (the command is `devstack.test` in ../helmfile.yaml):

    devstack test stock                          # python -m unittest -v
    devstack test stock -- python -m unittest test_app.StockTest.test_healthz
"""

import json
import unittest
from unittest import mock

import app


def get(path: str) -> tuple[str, dict[str, object]]:
    """Call the WSGI app as a server would: its status line and JSON body."""
    seen: list[str] = []
    body = b"".join(app.app({"PATH_INFO": path}, lambda status, _headers: seen.append(status)))
    return seen[0], json.loads(body)


class StockTest(unittest.TestCase):
    def test_healthz(self) -> None:
        self.assertEqual(get("/healthz"), ("200 OK", {"ok": True}))

    def test_an_item_is_reserved_and_counted(self) -> None:
        with mock.patch.object(app, "reserve", return_value={"queue": "q", "sent": True}) as r:
            status, body = get("/teapot")
        r.assert_called_once_with("teapot")
        self.assertEqual(status, "200 OK")
        self.assertEqual(body["service"], app.SERVICE)
        self.assertEqual(body["message"], app.MESSAGE)
        self.assertEqual((body["left"], body["queue"]), (7, "q"))


if __name__ == "__main__":
    unittest.main()
