"""Fast tests of each part, in-process (the app through TestClient, backends and the batcher directly)."""
