"""Visible test cases of each lab, registered for ``lab_support.grading.check``."""
