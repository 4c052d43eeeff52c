"""Privacy: data masking, PII scrubbing measured on generated text, membership-inference attacks."""
