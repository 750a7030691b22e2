"""Where photos come from: folders, manifests, URL lists, downloads, safe decoding, ingest."""
