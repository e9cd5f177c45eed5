"""HTTP API, job store, WebRTC live mode, metrics and web pages."""
