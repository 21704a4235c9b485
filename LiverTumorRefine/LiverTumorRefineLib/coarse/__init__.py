"""Coarse sources: seeded growth, the automatic network and TotalSegmentator."""
