"""Development support shared by tests/, bench/ and fuzz/: the diffusers oracle, reference tars, media and archive
builders, the loopback file server, the coglet client and the predictor fixtures. Never imported by the product."""
