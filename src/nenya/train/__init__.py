"""Training of the encoders nenya extracts with."""
