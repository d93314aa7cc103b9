"""Starting jobs: one process directly, several through torch's elastic agent."""
