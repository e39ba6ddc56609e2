"""The registry mirror: a pull-through cache of Docker Hub and other upstream registries.

An optional extension beside the core: ``upstreams`` (configuration and which requests go
where), ``client`` (the upstream protocol), ``service`` (the cache), ``stats`` (counters)
and ``eviction`` (the size limit). The HTTP layer reaches it through http/v2_proxy.py.
"""
