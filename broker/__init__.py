"""Redis sorted-set lanes: the queue whose order is the schedule."""
