"""Storage tiers: process memory (L1) and Redis (L2), behind one small interface."""
