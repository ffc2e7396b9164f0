"""The parts of a Moderator, one concern a module, each layer built on the one below:
calls (state, threads, the store), originals, announcements, resembling, judging; the
Moderator (moderator.py) keeps only the order of questions."""
