"""A minimal read-only Docker registry (HTTP API v2) on 127.0.0.1, serving one image made of
one uncompressed layer, for tests of pulls where no real registry can be reached.

    python3 registry.py PORT_FILE LAYER_TAR

Writes the port to PORT_FILE once listening, and the number of manifest requests so far to
PORT_FILE.pulls after each one."""
import hashlib, http.server, json, sys, threading

layer = open(sys.argv[2], 'rb').read()
port_file = sys.argv[1]
layer_digest = 'sha256:' + hashlib.sha256(layer).hexdigest()
config = json.dumps({
    'architecture': 'amd64', 'os': 'linux',
    'config': {'Env': ['PATH=/bin']},
    'rootfs': {'type': 'layers', 'diff_ids': [layer_digest]},
}).encode()
config_digest = 'sha256:' + hashlib.sha256(config).hexdigest()
manifest = json.dumps({
    'schemaVersion': 2,
    'mediaType': 'application/vnd.oci.image.manifest.v1+json',
    'config': {'mediaType': 'application/vnd.oci.image.config.v1+json', 'digest': config_digest, 'size': len(config)},
    'layers': [{'mediaType': 'application/vnd.oci.image.layer.v1.tar', 'digest': layer_digest, 'size': len(layer)}],
}).encode()
manifest_digest = 'sha256:' + hashlib.sha256(manifest).hexdigest()
blobs = {layer_digest: layer, config_digest: config}
pulls = 0

class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def send(self, code, body=b'', ctype='application/json', extra=None, head=False):
        self.send_response(code)
        self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(body)))
        self.send_header('Docker-Distribution-API-Version', 'registry/2.0')
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)
    def route(self, head):
        global pulls
        p = self.path.split('?')[0]
        if p in ('/v2/', '/v2'):
            return self.send(200, b'{}', head=head)
        if '/manifests/' in p:
            pulls += 1
            with open(port_file + '.pulls', 'w') as f:
                f.write(str(pulls))
            return self.send(200, manifest, 'application/vnd.oci.image.manifest.v1+json',
                             {'Docker-Content-Digest': manifest_digest}, head)
        if '/blobs/' in p:
            d = p.rsplit('/', 1)[1]
            if d in blobs:
                return self.send(200, blobs[d], 'application/octet-stream', {'Docker-Content-Digest': d}, head)
        return self.send(404, b'{"errors":[{"code":"NOT_FOUND"}]}', head=head)
    def do_GET(self): self.route(False)
    def do_HEAD(self): self.route(True)

srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)
with open(port_file + '.tmp', 'w') as f:
    f.write(str(srv.server_address[1]))
import os; os.rename(port_file + '.tmp', port_file)
srv.serve_forever()
