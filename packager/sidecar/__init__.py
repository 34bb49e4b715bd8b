"""Sidecars: fields derived from headers, and the allowlist they pass through."""
