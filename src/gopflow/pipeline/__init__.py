"""The GOP pipeline: plan closed GOPs, run them on Ray, keep a resumable work dir, assemble."""
