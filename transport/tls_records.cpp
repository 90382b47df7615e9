#include "transport/tls_records.hpp"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#ifdef FERRY_HAVE_IPSEC_MB
#include <intel-ipsec-mb.h>
#endif

namespace ferry {
namespace {

constexpr std::uint8_t type_alert = 21;
constexpr std::uint8_t type_handshake = 22;
constexpr std::uint8_t type_application_data = 23;
constexpr std::uint8_t handshake_key_update = 24;
constexpr std::uint8_t handshake_new_session_ticket = 4;
constexpr std::uint8_t alert_close_notify = 0;
constexpr std::uint8_t alert_user_canceled = 90;

std::size_t key_len(tls_suite s) { return s == tls_suite::aes_128_gcm_sha256 ? 16 : 32; }
const EVP_MD* suite_md(tls_suite s) { return s == tls_suite::aes_256_gcm_sha384 ? EVP_sha384() : EVP_sha256(); }
bool is_aes(tls_suite s) { return s != tls_suite::chacha20_poly1305_sha256; }

[[noreturn]] void crypto_failure(const char* what) { throw std::runtime_error(std::string("TLS records: ") + what); }

class evp_cipher final : public record_cipher {
public:
    evp_cipher(tls_suite suite, std::span<const std::uint8_t> key) {
        const EVP_CIPHER* c = suite == tls_suite::aes_128_gcm_sha256   ? EVP_aes_128_gcm()
                              : suite == tls_suite::aes_256_gcm_sha384 ? EVP_aes_256_gcm()
                                                                       : EVP_chacha20_poly1305();
        enc_ = EVP_CIPHER_CTX_new();
        dec_ = EVP_CIPHER_CTX_new();
        if (enc_ == nullptr || dec_ == nullptr || EVP_EncryptInit_ex(enc_, c, nullptr, key.data(), nullptr) != 1 ||
            EVP_DecryptInit_ex(dec_, c, nullptr, key.data(), nullptr) != 1) {
            EVP_CIPHER_CTX_free(enc_);
            EVP_CIPHER_CTX_free(dec_);
            crypto_failure("cannot set up the AEAD");
        }
    }
    ~evp_cipher() override {
        EVP_CIPHER_CTX_free(enc_);
        EVP_CIPHER_CTX_free(dec_);
    }

    void seal(const std::uint8_t* nonce, std::span<const std::uint8_t> aad,
              std::span<const std::span<const std::uint8_t>> in, std::uint8_t* out) override {
        int n = 0;
        bool ok = EVP_EncryptInit_ex(enc_, nullptr, nullptr, nullptr, nonce) == 1 &&
                  EVP_EncryptUpdate(enc_, nullptr, &n, aad.data(), static_cast<int>(aad.size())) == 1;
        std::size_t pos = 0;
        for (auto seg : in) {
            if (!ok || seg.empty()) {
                continue;
            }
            ok = EVP_EncryptUpdate(enc_, out + pos, &n, seg.data(), static_cast<int>(seg.size())) == 1;
            pos += static_cast<std::size_t>(n);
        }
        ok = ok && EVP_EncryptFinal_ex(enc_, out + pos, &n) == 1;
        pos += static_cast<std::size_t>(n);
        ok = ok && EVP_CIPHER_CTX_ctrl(enc_, EVP_CTRL_AEAD_GET_TAG, tag_len, out + pos) == 1;
        if (!ok) {
            crypto_failure("sealing a record failed");
        }
    }

    bool open(const std::uint8_t* nonce, std::span<const std::uint8_t> aad, std::span<const std::uint8_t> in,
              const std::uint8_t* tag, std::uint8_t* out, std::size_t split, std::uint8_t* tail) override {
        int n = 0;
        std::uint8_t end[16];
        split = std::min(split, in.size());
        // GCM and ChaCha20-Poly1305 are stream modes: EVP writes exactly what it is given.
        return EVP_DecryptInit_ex(dec_, nullptr, nullptr, nullptr, nonce) == 1 &&
               EVP_DecryptUpdate(dec_, nullptr, &n, aad.data(), static_cast<int>(aad.size())) == 1 &&
               (split == 0 || EVP_DecryptUpdate(dec_, out, &n, in.data(), static_cast<int>(split)) == 1) &&
               (split == in.size() ||
                EVP_DecryptUpdate(dec_, tail, &n, in.data() + split, static_cast<int>(in.size() - split)) == 1) &&
               EVP_CIPHER_CTX_ctrl(dec_, EVP_CTRL_AEAD_SET_TAG, tag_len, const_cast<std::uint8_t*>(tag)) == 1 &&
               EVP_DecryptFinal_ex(dec_, end, &n) == 1;
    }

private:
    EVP_CIPHER_CTX* enc_ = nullptr;
    EVP_CIPHER_CTX* dec_ = nullptr;
};

#ifdef FERRY_HAVE_IPSEC_MB
// One manager for the process: the GCM direct API only dispatches through it and keeps
// all state in the key and context structures passed in, so sharing it is safe.
IMB_MGR* ipsec_manager() {
    static IMB_MGR* mgr = [] {
        IMB_MGR* m = alloc_mb_mgr(0);
        if (m == nullptr) {
            return m;
        }
        IMB_ARCH arch = IMB_ARCH_NONE;
        init_mb_mgr_auto(m, &arch);
        // Below AVX2 ipsec-mb is no faster than OpenSSL's AES-NI code.
        if (arch < IMB_ARCH_AVX2 || imb_get_errno(m) != 0) {
            free_mb_mgr(m);
            return static_cast<IMB_MGR*>(nullptr);
        }
        return m;
    }();
    return mgr;
}

class ipsec_gcm final : public record_cipher {
public:
    ipsec_gcm(tls_suite suite, std::span<const std::uint8_t> key) : aes256_(suite == tls_suite::aes_256_gcm_sha384) {
        mgr_ = ipsec_manager();
        if (aes256_) {
            IMB_AES256_GCM_PRE(mgr_, key.data(), &key_);
        } else {
            IMB_AES128_GCM_PRE(mgr_, key.data(), &key_);
        }
    }
    ~ipsec_gcm() override { OPENSSL_cleanse(&key_, sizeof key_); }

    void seal(const std::uint8_t* nonce, std::span<const std::uint8_t> aad,
              std::span<const std::span<const std::uint8_t>> in, std::uint8_t* out) override {
        alignas(64) gcm_context_data ctx;
        std::size_t pos = 0;
        if (aes256_) {
            IMB_AES256_GCM_INIT(mgr_, &key_, &ctx, nonce, aad.data(), aad.size());
            for (auto seg : in) {
                if (!seg.empty()) {
                    IMB_AES256_GCM_ENC_UPDATE(mgr_, &key_, &ctx, out + pos, seg.data(), seg.size());
                    pos += seg.size();
                }
            }
            IMB_AES256_GCM_ENC_FINALIZE(mgr_, &key_, &ctx, out + pos, tag_len);
        } else {
            IMB_AES128_GCM_INIT(mgr_, &key_, &ctx, nonce, aad.data(), aad.size());
            for (auto seg : in) {
                if (!seg.empty()) {
                    IMB_AES128_GCM_ENC_UPDATE(mgr_, &key_, &ctx, out + pos, seg.data(), seg.size());
                    pos += seg.size();
                }
            }
            IMB_AES128_GCM_ENC_FINALIZE(mgr_, &key_, &ctx, out + pos, tag_len);
        }
        OPENSSL_cleanse(&ctx, sizeof ctx);
    }

    bool open(const std::uint8_t* nonce, std::span<const std::uint8_t> aad, std::span<const std::uint8_t> in,
              const std::uint8_t* tag, std::uint8_t* out, std::size_t split, std::uint8_t* tail) override {
        alignas(64) gcm_context_data ctx;
        std::uint8_t computed[tag_len];
        split = std::min(split, in.size());
        if (aes256_) {
            IMB_AES256_GCM_INIT(mgr_, &key_, &ctx, nonce, aad.data(), aad.size());
            if (split > 0) {
                IMB_AES256_GCM_DEC_UPDATE(mgr_, &key_, &ctx, out, in.data(), split);
            }
            if (split < in.size()) {
                IMB_AES256_GCM_DEC_UPDATE(mgr_, &key_, &ctx, tail, in.data() + split, in.size() - split);
            }
            IMB_AES256_GCM_DEC_FINALIZE(mgr_, &key_, &ctx, computed, tag_len);
        } else {
            IMB_AES128_GCM_INIT(mgr_, &key_, &ctx, nonce, aad.data(), aad.size());
            if (split > 0) {
                IMB_AES128_GCM_DEC_UPDATE(mgr_, &key_, &ctx, out, in.data(), split);
            }
            if (split < in.size()) {
                IMB_AES128_GCM_DEC_UPDATE(mgr_, &key_, &ctx, tail, in.data() + split, in.size() - split);
            }
            IMB_AES128_GCM_DEC_FINALIZE(mgr_, &key_, &ctx, computed, tag_len);
        }
        OPENSSL_cleanse(&ctx, sizeof ctx);
        return CRYPTO_memcmp(computed, tag, tag_len) == 0;
    }

private:
    IMB_MGR* mgr_ = nullptr;
    bool aes256_ = false;
    alignas(64) gcm_key_data key_;
};
#endif

aead_backend resolve(tls_suite suite, aead_backend backend) {
    if (backend == aead_backend::automatic) {
        const char* env = std::getenv("FERRY_AEAD");
        if (env != nullptr && std::strcmp(env, "openssl") == 0) {
            return aead_backend::openssl;
        }
        backend = aead_backend::ipsec_mb;
    }
#ifdef FERRY_HAVE_IPSEC_MB
    if (backend == aead_backend::ipsec_mb && is_aes(suite) && ipsec_manager() != nullptr) {
        return aead_backend::ipsec_mb;
    }
#else
    (void)suite;
#endif
    return aead_backend::openssl;
}

}  // namespace

std::string aead_backend_name(tls_suite suite, aead_backend backend) {
    return resolve(suite, backend) == aead_backend::ipsec_mb ? "ipsec-mb" : "openssl";
}

std::unique_ptr<record_cipher> make_record_cipher(tls_suite suite, std::span<const std::uint8_t> key,
                                                  aead_backend backend) {
    if (key.size() != key_len(suite)) {
        crypto_failure("wrong key length");
    }
#ifdef FERRY_HAVE_IPSEC_MB
    if (resolve(suite, backend) == aead_backend::ipsec_mb) {
        return std::make_unique<ipsec_gcm>(suite, key);
    }
#else
    (void)backend;
#endif
    return std::make_unique<evp_cipher>(suite, key);
}

std::vector<std::uint8_t> hkdf_expand_label(tls_suite suite, std::span<const std::uint8_t> secret,
                                            const std::string& label, std::size_t length) {
    // struct { uint16 length; opaque label<7..255> = "tls13 " + label; opaque context<0..255> = ""; }
    std::string full = "tls13 " + label;
    std::array<std::uint8_t, 4 + 255> info{};
    if (full.size() > 255 || length > 0xffff) {
        crypto_failure("bad HKDF label");
    }
    info[0] = static_cast<std::uint8_t>(length >> 8);
    info[1] = static_cast<std::uint8_t>(length & 0xff);
    info[2] = static_cast<std::uint8_t>(full.size());
    std::memcpy(info.data() + 3, full.data(), full.size());
    std::size_t info_len = 3 + full.size() + 1;  // the last byte: empty context

    std::vector<std::uint8_t> out(length);
    EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
    EVP_KDF_CTX* ctx = kdf != nullptr ? EVP_KDF_CTX_new(kdf) : nullptr;
    EVP_KDF_free(kdf);
    if (ctx == nullptr) {
        crypto_failure("HKDF is not available");
    }
    int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
    const char* md = EVP_MD_get0_name(suite_md(suite));
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(md), 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<std::uint8_t*>(secret.data()), secret.size()),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(), info_len),
        OSSL_PARAM_construct_end(),
    };
    int rc = EVP_KDF_derive(ctx, out.data(), out.size(), params);
    EVP_KDF_CTX_free(ctx);
    if (rc != 1) {
        crypto_failure("HKDF-Expand-Label failed");
    }
    return out;
}

tls_traffic_secrets::~tls_traffic_secrets() {
    OPENSSL_cleanse(client.data(), client.size());
    OPENSSL_cleanse(server.data(), server.size());
}

// One direction: the current traffic secret, its key and IV, and the record counter.
struct tls13_records::direction {
    direction(tls_suite suite, std::vector<std::uint8_t> s, aead_backend backend) : secret(std::move(s)) {
        rekey(suite, backend);
    }
    ~direction() { OPENSSL_cleanse(secret.data(), secret.size()); }

    void rekey(tls_suite suite, aead_backend backend) {
        std::vector<std::uint8_t> key = hkdf_expand_label(suite, secret, "key", key_len(suite));
        std::vector<std::uint8_t> iv_bytes = hkdf_expand_label(suite, secret, "iv", record_cipher::nonce_len);
        cipher = make_record_cipher(suite, key, backend);
        std::copy(iv_bytes.begin(), iv_bytes.end(), iv.begin());
        OPENSSL_cleanse(key.data(), key.size());
        seq = 0;
    }
    // KeyUpdate: application_traffic_secret_N+1 = HKDF-Expand-Label(secret_N, "traffic upd", "", Hash.length).
    void update(tls_suite suite, aead_backend backend) {
        std::vector<std::uint8_t> next = hkdf_expand_label(suite, secret, "traffic upd", secret.size());
        OPENSSL_cleanse(secret.data(), secret.size());
        secret = std::move(next);
        rekey(suite, backend);
    }
    // Per-record nonce: the IV XORed with the 64-bit sequence number, right-aligned.
    std::array<std::uint8_t, record_cipher::nonce_len> nonce() const {
        auto n = iv;
        for (int i = 0; i < 8; ++i) {
            n[record_cipher::nonce_len - 1 - i] ^= static_cast<std::uint8_t>(seq >> (8 * i));
        }
        return n;
    }

    std::vector<std::uint8_t> secret;
    std::unique_ptr<record_cipher> cipher;
    std::array<std::uint8_t, record_cipher::nonce_len> iv{};
    std::uint64_t seq = 0;
};

tls13_records::tls13_records(tls_suite suite, const tls_traffic_secrets& secrets, bool is_client,
                             aead_backend backend, std::uint64_t key_update_after)
    : suite_(suite), backend_(resolve(suite, backend)), key_update_after_(std::max<std::uint64_t>(key_update_after, 1)) {
    std::size_t hash_len = static_cast<std::size_t>(EVP_MD_get_size(suite_md(suite)));
    if (secrets.client.size() != hash_len || secrets.server.size() != hash_len) {
        crypto_failure("the handshake did not yield the traffic secrets");
    }
    write_ = std::make_unique<direction>(suite, is_client ? secrets.client : secrets.server, backend_);
    read_ = std::make_unique<direction>(suite, is_client ? secrets.server : secrets.client, backend_);
}

tls13_records::~tls13_records() = default;

std::string tls13_records::cipher_name() const {
    const char* name = suite_ == tls_suite::aes_128_gcm_sha256   ? "TLS_AES_128_GCM_SHA256"
                       : suite_ == tls_suite::aes_256_gcm_sha384 ? "TLS_AES_256_GCM_SHA384"
                                                                 : "TLS_CHACHA20_POLY1305_SHA256";
    return std::string(name) + " (" + (backend_ == aead_backend::ipsec_mb ? "ipsec-mb" : "openssl") + ")";
}

void tls13_records::seal_record(direction& d, std::uint8_t type, std::span<const std::span<const std::uint8_t>> data,
                                std::uint8_t* out, std::size_t len) {
    std::size_t ct_len = len + 1 + record_cipher::tag_len;
    out[0] = type_application_data;
    out[1] = 0x03;
    out[2] = 0x03;
    out[3] = static_cast<std::uint8_t>(ct_len >> 8);
    out[4] = static_cast<std::uint8_t>(ct_len & 0xff);
    // The inner plaintext is the content followed by its real type; no padding.
    std::span<const std::uint8_t> segs[3];
    std::size_t nseg = 0;
    std::span<const std::span<const std::uint8_t>> in;
    std::vector<std::span<const std::uint8_t>> many;
    const std::uint8_t type_byte = type;
    if (data.size() <= 2) {
        for (auto s : data) {
            segs[nseg++] = s;
        }
        segs[nseg++] = std::span<const std::uint8_t>(&type_byte, 1);
        in = std::span<const std::span<const std::uint8_t>>(segs, nseg);
    } else {
        many.assign(data.begin(), data.end());
        many.emplace_back(&type_byte, 1);
        in = many;
    }
    auto nonce = d.nonce();
    d.cipher->seal(nonce.data(), std::span<const std::uint8_t>(out, header_len), in, out + header_len);
    ++d.seq;
}

std::size_t tls13_records::seal_key_update(std::uint8_t* out) {
    // HandshakeType key_update(24), length 1, KeyUpdateRequest: update_not_requested(0).
    const std::uint8_t msg[5] = {handshake_key_update, 0, 0, 1, 0};
    std::span<const std::uint8_t> seg(msg, sizeof msg);
    seal_record(*write_, type_handshake, std::span<const std::span<const std::uint8_t>>(&seg, 1), out, sizeof msg);
    write_->update(suite_, backend_);
    reply_key_update_ = false;
    return sizeof msg + overhead;
}

std::size_t tls13_records::seal_data(std::span<const std::span<const std::uint8_t>> data, std::uint8_t* out) {
    std::size_t len = 0;
    for (auto s : data) {
        len += s.size();
    }
    if (len > max_plain) {
        crypto_failure("record content too large");
    }
    std::size_t pos = 0;
    if (reply_key_update_ || write_->seq >= key_update_after_) {
        pos = seal_key_update(out);
    }
    seal_record(*write_, type_application_data, data, out + pos, len);
    return pos + len + overhead;
}

std::size_t tls13_records::seal_close_notify(std::uint8_t* out) {
    const std::uint8_t alert[2] = {1, alert_close_notify};  // warning, close_notify
    std::span<const std::uint8_t> seg(alert, sizeof alert);
    seal_record(*write_, type_alert, std::span<const std::span<const std::uint8_t>>(&seg, 1), out, sizeof alert);
    return sizeof alert + overhead;
}

std::size_t tls13_records::record_size(const std::uint8_t* p, std::size_t n) {
    if (n < header_len) {
        return 0;
    }
    std::size_t len = (std::size_t{p[3]} << 8) | p[4];
    // After the handshake every TLS 1.3 record is opaque application_data, version 0x0303.
    if (p[0] != type_application_data || p[1] != 0x03 || p[2] != 0x03 || len < 1 + record_cipher::tag_len ||
        header_len + len > max_record) {
        return SIZE_MAX;
    }
    return header_len + len;
}

record_opened tls13_records::open(std::span<const std::uint8_t> rec, std::uint8_t* out, std::size_t room) {
    record_opened r;
    std::size_t ct_len = rec.size() - header_len - record_cipher::tag_len;
    // The inner plaintext (content, type, padding) is at most 2^14 + 1 bytes (RFC 8446
    // 5.4, record_overflow); the caller gave room for all of it but the type byte.
    if (ct_len > max_plain + 1 || room + 1 < ct_len) {
        return r;
    }
    std::size_t split = std::min(room, ct_len);
    std::uint8_t tail = 0;
    auto nonce = read_->nonce();
    try {
        if (!read_->cipher->open(nonce.data(), rec.subspan(0, header_len), rec.subspan(header_len, ct_len),
                                 rec.data() + header_len + ct_len, out, split, &tail)) {
            return r;  // bad_record_mac
        }
    } catch (const std::exception&) {
        return r;
    }
    ++read_->seq;
    // Strip the padding: the real content type is the last non-zero byte.
    auto at = [&](std::size_t i) { return i < split ? out[i] : tail; };
    std::size_t n = ct_len;
    while (n > 0 && at(n - 1) == 0) {
        --n;
    }
    if (n == 0) {
        return r;  // no content type: unexpected_message
    }
    std::uint8_t type = at(n - 1);
    --n;  // the content is out[0, n), n <= split
    if (type == type_application_data) {
        r.what = record_opened::kind::data;
        r.length = n;
        return r;
    }
    if (type == type_alert) {
        if (n != 2) {
            return r;
        }
        r.alert = out[1];
        if (out[1] == alert_close_notify) {
            r.what = record_opened::kind::close;
        } else if (out[1] == alert_user_canceled && out[0] == 1) {
            r.what = record_opened::kind::control;  // a warning; close_notify follows
        } else {
            r.what = record_opened::kind::alert;
        }
        return r;
    }
    if (type == type_handshake && n > 0) {
        try {
            return handle_handshake(out, n);
        } catch (const std::exception&) {
            return r;  // rekeying failed
        }
    }
    return r;
}

record_opened tls13_records::handle_handshake(const std::uint8_t* msg, std::size_t len) {
    record_opened r;
    // Each record carries whole handshake messages (ferry and OpenSSL both send them so).
    std::size_t pos = 0;
    while (pos < len) {
        if (len - pos < 4) {
            return r;
        }
        std::uint8_t type = msg[pos];
        std::size_t body = (std::size_t{msg[pos + 1]} << 16) | (std::size_t{msg[pos + 2]} << 8) | msg[pos + 3];
        if (len - pos - 4 < body) {
            return r;
        }
        if (type == handshake_key_update) {
            if (body != 1 || msg[pos + 4] > 1 || pos + 4 + body != len) {
                return r;  // a KeyUpdate must end its record: the next one uses the new key
            }
            read_->update(suite_, backend_);
            if (msg[pos + 4] == 1) {
                reply_key_update_ = true;
            }
        } else if (type != handshake_new_session_ticket) {
            return r;  // no other post-handshake message is allowed (no renegotiation, no auth)
        }
        pos += 4 + body;
    }
    r.what = record_opened::kind::control;
    return r;
}

}  // namespace ferry
