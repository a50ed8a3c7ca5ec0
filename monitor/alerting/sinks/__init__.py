"""Where notifications go: one package per integration on the shared ``base``; the
``registry`` builds them from ``[[alerting.sinks]]``."""
