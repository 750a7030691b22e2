"""The review app: a local web page to browse, label, correct and teach (``naturelens serve``)."""
