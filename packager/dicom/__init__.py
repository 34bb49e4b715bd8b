"""DICOM reading: the fast walker beside pydicom, multi-frame views, vendor private data."""
