"""Communications: the backhaul and mesh links, their faults, and who is a neighbour of whom."""
