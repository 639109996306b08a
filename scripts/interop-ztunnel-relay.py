#!/usr/bin/env python3
"""Test harness helper for scripts/interop-ztunnel.sh (not part of meshpeer).

ztunnel's CA client checks the CA server's certificate for the *host name*
of CA_ADDRESS (DNS or IP SAN; src/tls/control.rs in istio/ztunnel), as
istiod's serving certificate carries `istiod.istio-system.svc`. meshpeer's
cluster listener presents only its SPIFFE URI SAN, so ztunnel refuses it
(see INTEROP.md, blocker 1). To exercise the rest of the path, this relay
terminates ztunnel's TLS with a throwaway certificate that names the relay's
address, and re-originates TLS (ALPN h2) to meshpeer's cluster listener,
verifying meshpeer's chain to the shared root. The gRPC bytes, the bearer
token and meshpeer's answer pass through untouched: the certificates ztunnel
gets are signed by meshpeer's controller.

  interop-ztunnel-relay.py certs DIR IP...      throwaway CA + server cert
  interop-ztunnel-relay.py relay LISTEN_IP:PORT UPSTREAM_IP:PORT DIR ROOT_PEM
"""
import asyncio
import datetime
import ipaddress
import ssl
import sys


def make_certs(out, ips):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "interop relay CA (test only)")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("localhost")] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "interop relay")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    with open(f"{out}/relay-ca.pem", "wb") as f:
        f.write(ca.public_bytes(pem))
    with open(f"{out}/relay-cert.pem", "wb") as f:
        f.write(cert.public_bytes(pem))
    with open(f"{out}/relay-key.pem", "wb") as f:
        f.write(
            key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


def split(hp):
    h, p = hp.rsplit(":", 1)
    return h, int(p)


async def relay(listen, upstream, d, root):
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(f"{d}/relay-cert.pem", f"{d}/relay-key.pem")
    sctx.set_alpn_protocols(["h2"])
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(root)
    # meshpeer's listener has no DNS/IP SAN (that is the blocker); the chain
    # to the shared root is still verified.
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_REQUIRED
    cctx.set_alpn_protocols(["h2"])
    uh, up = split(upstream)

    async def handle(r, w):
        peer = w.get_extra_info("peername")
        try:
            ur, uw = await asyncio.open_connection(uh, up, ssl=cctx, server_hostname="")
        except Exception as e:  # noqa: BLE001
            print(f"relay: {peer} -> {upstream}: upstream TLS failed: {e}", flush=True)
            w.close()
            return
        so = uw.get_extra_info("ssl_object")
        cert = so.getpeercert()
        sans = [v for (k, v) in cert.get("subjectAltName", ())]
        print(
            f"relay: {peer} -> {upstream}: upstream {so.version()} alpn={so.selected_alpn_protocol()} "
            f"server SANs={sans} (chain verified to {root})",
            flush=True,
        )
        await asyncio.gather(pipe(r, uw), pipe(ur, w))

    lh, lp = split(listen)
    server = await asyncio.start_server(handle, lh, lp, ssl=sctx)
    print(f"relay: listening on {listen} -> {upstream}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1] == "certs":
        make_certs(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "relay":
        asyncio.run(relay(*sys.argv[2:6]))
    else:
        sys.exit(__doc__)
