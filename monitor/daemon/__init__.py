"""The long-running scheduler (APScheduler), its jobs and health."""
