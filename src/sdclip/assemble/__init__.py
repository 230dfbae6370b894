"""Stage 5: encoded rows → conditioning. Weighting (a registry of named modes), combining rows / AND /
blend / concat, padding positive and negative to one length, and the family's recipe that joins encoders."""
