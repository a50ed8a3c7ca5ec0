"""The long-running daemon: the APScheduler scheduler (`scheduler`) on its persistent
job store (`jobstore`) and what it reports about its health (`health`)."""
