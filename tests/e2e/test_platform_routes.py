import http.client, time, socket
from urllib.parse import urlsplit

def test_probe(platform):
    u = urlsplit(platform.gateway)
    body = b'{"citizenId": "' + b"x" * (12 * 1024 * 1024) + b'"}'
    tok = platform._token("e2e", ["housing:apply"])
    for attempt in [0,0,0,0,1,1]:
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        t = time.monotonic()
        c.putrequest("POST", "/v1/housing/applications")
        c.putheader("content-type", "application/json")
        c.putheader("authorization", "Bearer " + tok)
        c.putheader("content-length", str(len(body)))
        if attempt: c.putheader("connection", "close")
        c.endheaders()
        sent = 0
        try:
            for i in range(0, len(body), 65536):
                c.sock.sendall(body[i:i+65536]); sent += 65536
        except OSError as e:
            print("send error", e, sent, time.monotonic() - t)
        print("sent", sent, time.monotonic() - t)
        r = c.getresponse()
        c.close()
        print(r.status, r.getheaders(), r.read())
    assert False
