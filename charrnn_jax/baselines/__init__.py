"""Reference implementations we compare against (optional dependencies)."""
