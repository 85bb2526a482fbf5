"""tarpipe: exact, streaming, safe tar pipes for code sandboxes."""
