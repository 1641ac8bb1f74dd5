"""One router per Label Studio endpoint family."""
