"""sluicegate: an event-sourced AI gateway on Kafka."""
