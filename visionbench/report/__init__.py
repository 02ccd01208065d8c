"""Reports are pure functions of run directories on disk; this package never imports the engine."""
