"""The integrator's kit behind `mtor-cds call`, `dev-key` and `fixtures load`: build, sign, send and print
CDS Hooks requests, and load the fixture patients into a FHIR server. Development and testing only:
nothing here runs inside the service.
"""
