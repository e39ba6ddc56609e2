"""The HTTP surface (RSGI, served by granian): the only part that knows HTTP."""
