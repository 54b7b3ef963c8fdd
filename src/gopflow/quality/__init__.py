"""Quality measurement of what the viewer gets (decoded, restored) against the source."""
