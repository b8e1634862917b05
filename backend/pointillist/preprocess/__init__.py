"""Portrait understanding: safe decoding, face landmarks, alignment and matting (no downloaded weights)."""
