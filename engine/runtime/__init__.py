"""Running jobs: transition rules (pure), dispatching, timers and the orchestrator."""
