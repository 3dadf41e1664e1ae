"""The KB: reading its sources into canonical docs and QA records (with the updates folder's
edits), its change set against the champion's, and the questions it answers itself."""
