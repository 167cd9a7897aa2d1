"""The DNS side of SafeNest: wire handling, the resolver chain, cache, upstreams and sockets."""
