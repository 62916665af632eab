"""What a run leaves behind: per-interval records, KPIs, and the run store on disk."""
