"""Who is calling: bearer tokens verified against an issuer's keys (:mod:`.tokens`,
:mod:`.jwks`), the tenant they belong to (:mod:`.tenancy`), the permissions their scopes grant
(:mod:`.scopes`, planned and edited by :mod:`.scopemap`), and the development issuer
(:mod:`.devissuer`)."""
