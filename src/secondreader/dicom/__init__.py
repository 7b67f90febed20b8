"""Reading DICOM inputs, deciding eligibility from the header, and decoding pixels."""
