"""The pure model of the OCI / Docker registry protocol: no I/O here."""
