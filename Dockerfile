# Lessl in a container: the static release binary and nothing else (no shell, no libc, no CA
# files; the https roots are compiled in). Nothing is pulled, so this builds offline.
#
# Build with only the two files it needs as context (the target/ directory is gigabytes):
#
#   cargo build --release
#   tar -c Dockerfile target/x86_64-unknown-linux-musl/release/lessl | docker build -t lessl -
#
# Run it against the host's Docker Engine with only the Engine's socket mounted: in a
# container and without --agent, Lessl copies itself into the volume lessl-agent-<version>-
# <hash> once and mounts that read-only at /.lessl in every task container
# (--agent-source auto). --network host keeps the API on the host's loopback; for
# --listen 0.0.0.0:8734 (the default CMD) a token file is required.
#
#   docker run -d --name lessl --network host \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     lessl serve --listen 127.0.0.1:8734
FROM scratch
COPY target/x86_64-unknown-linux-musl/release/lessl /lessl
EXPOSE 8734
ENTRYPOINT ["/lessl"]
# Reachable from outside the container, hence the token: mount one at this path
# (-v /etc/lessl/token:/run/secrets/lessl-token:ro), or override CMD as above.
CMD ["serve", "--listen", "0.0.0.0:8734", "--token-file", "/run/secrets/lessl-token"]
