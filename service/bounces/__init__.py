"""Bounces and complaints: read what comes back, attribute it, and keep the list clean."""
