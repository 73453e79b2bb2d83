"""SeqIO task and mixture registrations (installed as `spot.tasks`)."""
