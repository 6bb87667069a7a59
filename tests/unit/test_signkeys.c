/* Unit tests for signkeys: what a callback endpoint and an operator rely on — a signature that
 * verifies with the key published in the JWKS and binds the exact body, a key that survives
 * restarts, rotation that never breaks a signature still in flight, private files, and a damaged
 * key reported rather than silently replaced.
 *
 * Known answers: SHA-256 of "abc" and of the empty string (FIPS 180-2 / NIST examples). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <dirent.h>
#include <pthread.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/pem.h>

#include "jws.h"
#include "signkeys.h"
#include "util.h"

#define SHA256_ABC   "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define SHA256_EMPTY "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define ISSUER       "http://127.0.0.1:8081"
#define AUDIENCE     "https://auth.example.com/sandbox-creds"

static char *tmpdir(void)
{
    char *d = strdup("/tmp/test_signkeys.XXXXXX");
    assert_non_null(mkdtemp(d));
    return d;
}

static void rm_rf(char *dir)
{
    char *cmd = xasprintf("rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    free(dir);
}

static struct signkeys *open_ok(const char *dir)
{
    char *err = NULL;
    struct signkeys *kr = signkeys_open(dir, &err);
    if (kr == NULL)
        fail_msg("signkeys_open: %s", err);
    return kr;
}

/* The error of a signkeys_open that must fail (heap). */
static char *open_err(const char *dir)
{
    char *err = NULL;
    struct signkeys *kr = signkeys_open(dir, &err);
    assert_null(kr);
    assert_non_null(err);
    /* Whatever went wrong, no key material is quoted. */
    assert_null(strstr(err, "PRIVATE KEY"));
    assert_null(strstr(err, "MC4CAQAw"));
    return err;
}

static char *key_file(const char *dir, const char *kid)
{
    return xasprintf("%s/%s/key-%s.pem", dir, SIGNKEYS_DIR, kid);
}

static mode_t mode_of(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_mode & 07777;
}

static bool exists(const char *path)
{
    return access(path, F_OK) == 0;
}

/* Number of entries in the key directory other than . and .. */
static size_t dir_entries(const char *dir)
{
    char *path = xasprintf("%s/%s", dir, SIGNKEYS_DIR);
    DIR *d = opendir(path);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    free(path);
    return n;
}

static void write_text(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, mode), 0);
}

/* The JWKS entry with this kid, or NULL. */
static json_t *jwks_find(json_t *jwks, const char *kid)
{
    size_t i;
    json_t *k;
    json_array_foreach(json_object_get(jwks, "keys"), i, k)
    {
        if (strcmp(json_string_value(json_object_get(k, "kid")), kid) == 0)
            return k;
    }
    return NULL;
}

static size_t jwks_count(json_t *jwks)
{
    return json_array_size(json_object_get(jwks, "keys"));
}

static const char *jwks_kid_at(json_t *jwks, size_t i)
{
    return json_string_value(
        json_object_get(json_array_get(json_object_get(jwks, "keys"), i), "kid"));
}

/* Verifies jwt the way a callback endpoint does: the key named by its kid, from the JWKS.
 * Returns the claims (caller decrefs) and the kid (heap) through *kid when not NULL. */
static json_t *verify_via_jwks(json_t *jwks, const char *jwt, char **kid)
{
    unsigned char *hdr_raw;
    size_t n;
    const char *dot = strchr(jwt, '.');
    assert_non_null(dot);
    assert_int_equal(jws_b64url_decode(jwt, (size_t)(dot - jwt), &hdr_raw, &n), 0);
    json_t *hdr = json_loads((const char *)hdr_raw, 0, NULL);
    free(hdr_raw);
    const char *k = json_string_value(json_object_get(hdr, "kid"));
    assert_non_null(k);
    json_t *jwk = jwks_find(jwks, k);
    if (jwk == NULL)
        fail_msg("kid %s is not in the JWKS", k);
    EVP_PKEY *pub = jws_ed25519_from_jwk(jwk);
    assert_non_null(pub);
    json_t *claims = NULL;
    assert_int_equal(jws_verify_compact(pub, jwt, &claims, NULL), JWS_OK);
    if (kid != NULL)
        *kid = xstrdup(k);
    EVP_PKEY_free(pub);
    json_decref(hdr);
    return claims;
}

static char *sign_ok(struct signkeys *kr, const char *body, time_t now)
{
    char *jwt = NULL;
    assert_int_equal(signkeys_sign_callback(kr, ISSUER, AUDIENCE, (const unsigned char *)body,
                                            body ? strlen(body) : 0, now, &jwt),
                     JWS_OK);
    assert_non_null(jwt);
    return jwt;
}

static void test_first_open_creates_private_files_and_keeps_the_key(void **state)
{
    (void)state;
    char *dir = tmpdir();
    struct signkeys *kr = open_ok(dir);
    char *kid = signkeys_current_kid(kr);
    assert_int_equal(strlen(kid), JWS_B64URL_32_LEN);
    char *kdir = xasprintf("%s/%s", dir, SIGNKEYS_DIR);
    char *kfile = key_file(dir, kid);
    char *manifest = xasprintf("%s/%s", kdir, SIGNKEYS_MANIFEST_FILE);
    assert_int_equal(mode_of(kdir), 0700);
    assert_int_equal(mode_of(kfile), 0600);
    assert_int_equal(mode_of(manifest), 0600);
    signkeys_free(kr);

    /* A restart signs with the same key. */
    kr = open_ok(dir);
    char *again = signkeys_current_kid(kr);
    assert_string_equal(again, kid);
    signkeys_free(kr);

    /* The kid is the key's RFC 7638 thumbprint, computed independently of signkeys. */
    FILE *f = fopen(kfile, "r");
    assert_non_null(f);
    EVP_PKEY *pk = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(pk);
    char *tp = jws_ed25519_thumbprint(pk);
    assert_string_equal(tp, kid);
    free(tp);
    EVP_PKEY_free(pk);

    free(again);
    free(kid);
    free(kfile);
    free(manifest);
    free(kdir);
    rm_rf(dir);
}

static void test_signature_verifies_with_jwks_and_binds_the_body(void **state)
{
    (void)state;
    char *dir = tmpdir();
    struct signkeys *kr = open_ok(dir);
    time_t now = time(NULL);
    char *jwt = sign_ok(kr, "abc", now);

    /* The JWKS: exactly the current key, with the members of SPEC §4 in that order. */
    json_t *jwks = signkeys_jwks(kr, now);
    char *kid = signkeys_current_kid(kr);
    assert_int_equal(jwks_count(jwks), 1);
    json_t *jwk = json_array_get(json_object_get(jwks, "keys"), 0);
    char *x = xstrdup(json_string_value(json_object_get(jwk, "x")));
    char *want = xasprintf("{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"kid\":\"%s\",\"x\":\"%s\","
                           "\"use\":\"sig\",\"alg\":\"EdDSA\"}",
                           kid, x);
    char *got = json_dumps(jwk, JSON_COMPACT);
    assert_string_equal(got, want);
    free(got);
    free(want);

    /* Header and claims, byte for byte (member order is part of SPEC §4). */
    const char *dot1 = strchr(jwt, '.'), *dot2 = strrchr(jwt, '.');
    unsigned char *raw;
    size_t n;
    assert_int_equal(jws_b64url_decode(jwt, (size_t)(dot1 - jwt), &raw, &n), 0);
    want = xasprintf("{\"alg\":\"EdDSA\",\"kid\":\"%s\",\"typ\":\"JWT\"}", kid);
    assert_string_equal((char *)raw, want);
    free(want);
    free(raw);
    assert_int_equal(jws_b64url_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), &raw, &n), 0);
    want = xasprintf("{\"sub\":\"langsmith-sandbox-callback\",\"iss\":\"" ISSUER
                     "\",\"aud\":\"" AUDIENCE
                     "\",\"iat\":%lld,\"exp\":%lld,\"body_sha256\":\"" SHA256_ABC "\"}",
                     (long long)now, (long long)now + 300);
    assert_string_equal((char *)raw, want);
    free(want);
    free(raw);

    /* A verifier holding only the JWKS accepts it; the body hash it recomputes from a changed
     * body does not match. */
    json_t *claims = verify_via_jwks(jwks, jwt, NULL);
    const char *sha = json_string_value(json_object_get(claims, "body_sha256"));
    assert_string_equal(sha, SHA256_ABC);
    char *other = sign_ok(kr, "abd", now);
    json_t *other_claims = verify_via_jwks(jwks, other, NULL);
    assert_string_not_equal(json_string_value(json_object_get(other_claims, "body_sha256")), sha);
    json_decref(other_claims);
    free(other);
    json_decref(claims);

    /* An empty body. */
    char *empty = sign_ok(kr, NULL, now);
    claims = verify_via_jwks(jwks, empty, NULL);
    assert_string_equal(json_string_value(json_object_get(claims, "body_sha256")), SHA256_EMPTY);
    json_decref(claims);
    free(empty);

    /* A signature changed in flight no longer verifies with the published key. */
    EVP_PKEY *pub = jws_ed25519_from_jwk(jwk);
    char *t = xstrdup(jwt);
    t[strlen(t) - 2] = t[strlen(t) - 2] == 'A' ? 'B' : 'A';
    assert_int_equal(jws_verify_compact(pub, t, &claims, NULL), JWS_ERR_SIGNATURE);
    free(t);
    EVP_PKEY_free(pub);

    json_decref(jwks);
    free(x);
    free(kid);
    free(jwt);
    signkeys_free(kr);
    rm_rf(dir);
}

static void test_rotation_publishes_old_key_for_its_window(void **state)
{
    (void)state;
    char *dir = tmpdir();
    struct signkeys *kr = open_ok(dir);
    time_t t0 = time(NULL);
    char *kid1 = signkeys_current_kid(kr);
    char *before = sign_ok(kr, "abc", t0); /* in flight across the rotation */

    char *kid2 = NULL, *err = NULL;
    assert_int_equal(signkeys_rotate(dir, t0, &kid2, &err), 0);
    assert_string_not_equal(kid2, kid1);

    /* The running keyring picks the rotation up on reload, and only then. */
    char *cur = signkeys_current_kid(kr);
    assert_string_equal(cur, kid1);
    free(cur);
    assert_int_equal(signkeys_reload(kr, &err), 0);
    cur = signkeys_current_kid(kr);
    assert_string_equal(cur, kid2);
    free(cur);

    /* New signatures carry the new kid; the old one still verifies from the JWKS. */
    json_t *jwks = signkeys_jwks(kr, t0 + 10);
    assert_int_equal(jwks_count(jwks), 2);
    assert_string_equal(jwks_kid_at(jwks, 0), kid2);
    assert_string_equal(jwks_kid_at(jwks, 1), kid1);
    char *after = sign_ok(kr, "abc", t0 + 10), *k = NULL;
    json_decref(verify_via_jwks(jwks, after, &k));
    assert_string_equal(k, kid2);
    free(k);
    json_decref(verify_via_jwks(jwks, before, &k));
    assert_string_equal(k, kid1);
    free(k);
    json_decref(jwks);

    /* Published while a signature made just before retirement can be valid (+ skew), then not. */
    jwks = signkeys_jwks(kr, t0 + SIGNKEYS_TOKEN_LIFETIME + SIGNKEYS_CLOCK_SKEW - 1);
    assert_int_equal(jwks_count(jwks), 2);
    json_decref(jwks);
    jwks = signkeys_jwks(kr, t0 + SIGNKEYS_TOKEN_LIFETIME + SIGNKEYS_CLOCK_SKEW);
    assert_int_equal(jwks_count(jwks), 1);
    assert_string_equal(jwks_kid_at(jwks, 0), kid2);
    json_decref(jwks);

    /* A later rotation deletes the expired key from disk and retires the second. */
    char *f1 = key_file(dir, kid1), *f2 = key_file(dir, kid2);
    assert_true(exists(f1));
    char *kid3 = NULL;
    assert_int_equal(signkeys_rotate(dir, t0 + 1000, &kid3, &err), 0);
    assert_false(exists(f1));
    assert_true(exists(f2));
    assert_int_equal(signkeys_reload(kr, &err), 0);
    jwks = signkeys_jwks(kr, t0 + 1000);
    assert_int_equal(jwks_count(jwks), 2);
    assert_string_equal(jwks_kid_at(jwks, 0), kid3);
    assert_string_equal(jwks_kid_at(jwks, 1), kid2);
    json_decref(jwks);

    /* A fresh process sees the same state. */
    struct signkeys *kr2 = open_ok(dir);
    cur = signkeys_current_kid(kr2);
    assert_string_equal(cur, kid3);
    free(cur);
    signkeys_free(kr2);

    free(f1);
    free(f2);
    free(before);
    free(after);
    free(kid1);
    free(kid2);
    free(kid3);
    signkeys_free(kr);
    rm_rf(dir);
}

static void test_reload_reads_only_when_the_manifest_changed(void **state)
{
    (void)state;
    char *dir = tmpdir();
    struct signkeys *kr = open_ok(dir);
    char *kid = signkeys_current_kid(kr), *err = NULL;
    /* Damage the key file behind the keyring's back: a reload without a manifest change must
     * not read it (and so keeps working), which is what makes calling it per callback cheap. */
    char *kfile = key_file(dir, kid);
    write_text(kfile, "garbage\n", 0600);
    assert_int_equal(signkeys_reload(kr, &err), 0);
    free(sign_ok(kr, "x", time(NULL)));

    /* A rotation changes the manifest; the key set is re-read, the damage is found, and the
     * keyring keeps signing with what it had. */
    assert_int_equal(signkeys_rotate(dir, time(NULL), NULL, &err), 0);
    assert_int_equal(signkeys_reload(kr, &err), -1);
    assert_non_null(strstr(err, kfile));
    free(err);
    err = NULL;
    char *cur = signkeys_current_kid(kr);
    assert_string_equal(cur, kid);
    free(cur);
    free(sign_ok(kr, "x", time(NULL)));

    free(kfile);
    free(kid);
    signkeys_free(kr);
    rm_rf(dir);
}

static void test_damaged_state_is_an_error_not_a_new_key(void **state)
{
    (void)state;
    char *dir = tmpdir();
    struct signkeys *kr = open_ok(dir);
    char *kid = signkeys_current_kid(kr);
    signkeys_free(kr);
    char *kfile = key_file(dir, kid);
    char *manifest = xasprintf("%s/%s/%s", dir, SIGNKEYS_DIR, SIGNKEYS_MANIFEST_FILE);
    size_t entries = dir_entries(dir);
    size_t pem_len;
    char *pem = read_file(kfile, 4096, &pem_len);
    assert_non_null(pem);

    /* Truncated PEM. */
    char *cut = xstrndup(pem, pem_len / 2);
    write_text(kfile, cut, 0600);
    char *err = open_err(dir);
    assert_non_null(strstr(err, kfile));
    assert_non_null(strstr(err, "damaged"));
    free(err);
    free(cut);
    assert_int_equal(dir_entries(dir), entries); /* nothing created in its place */

    /* Readable by others. */
    write_text(kfile, pem, 0644);
    err = open_err(dir);
    assert_non_null(strstr(err, "0644"));
    free(err);

    /* A valid Ed25519 key, but not the one the kid names. */
    EVP_PKEY *other = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    FILE *f = fopen(kfile, "w");
    assert_int_equal(PEM_write_PrivateKey(f, other, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
    assert_int_equal(chmod(kfile, 0600), 0);
    EVP_PKEY_free(other);
    err = open_err(dir);
    assert_non_null(strstr(err, "another key"));
    free(err);

    /* Missing key file. */
    assert_int_equal(unlink(kfile), 0);
    err = open_err(dir);
    assert_non_null(strstr(err, kfile));
    free(err);

    /* Back in place, then a damaged manifest, and a manifest naming a path outside. */
    write_text(kfile, pem, 0600);
    signkeys_free(open_ok(dir));
    write_text(manifest, "{\"generation\": 1, \"current\": ", 0600);
    err = open_err(dir);
    assert_non_null(strstr(err, manifest));
    free(err);
    write_text(manifest,
               "{\"generation\": 1, \"current\": \"../../../../etc/passwd-xxxxxxxxxxxxxxxxxxxx\", "
               "\"retired\": []}",
               0600);
    err = open_err(dir);
    assert_non_null(strstr(err, manifest));
    free(err);
    /* Rotation refuses to build on a manifest it cannot read, too. */
    assert_int_equal(signkeys_rotate(dir, time(NULL), NULL, &err), -1);
    free(err);

    /* The directory open to others. */
    char *mf = xasprintf("{\"generation\": 1, \"current\": \"%s\", \"retired\": []}\n", kid);
    write_text(manifest, mf, 0600);
    free(mf);
    kr = open_ok(dir);
    signkeys_free(kr);
    char *kdir = xasprintf("%s/%s", dir, SIGNKEYS_DIR);
    assert_int_equal(chmod(kdir, 0755), 0);
    err = open_err(dir);
    assert_non_null(strstr(err, "0755"));
    free(err);
    free(kdir);

    secure_zero(pem, pem_len);
    free(pem);
    free(manifest);
    free(kfile);
    free(kid);
    rm_rf(dir);
}

static void test_unnamed_files_are_removed(void **state)
{
    (void)state;
    char *dir = tmpdir();
    struct signkeys *kr = open_ok(dir);
    signkeys_free(kr);
    /* What a crash can leave: a key a rotation created but never committed, a temporary. */
    char *orphan = key_file(dir, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    char *tmp = xasprintf("%s/%s/%s.tmp.abcdef", dir, SIGNKEYS_DIR, SIGNKEYS_MANIFEST_FILE);
    char *mine = xasprintf("%s/%s/README", dir, SIGNKEYS_DIR);
    write_text(orphan, "x", 0600);
    write_text(tmp, "x", 0600);
    write_text(mine, "x", 0600);
    kr = open_ok(dir);
    assert_false(exists(orphan));
    assert_false(exists(tmp));
    assert_true(exists(mine)); /* not ours to judge */
    signkeys_free(kr);
    free(orphan);
    free(tmp);
    free(mine);
    rm_rf(dir);
}

static void test_open_deletes_keys_past_their_window(void **state)
{
    (void)state;
    char *dir = tmpdir();
    struct signkeys *kr = open_ok(dir);
    char *kid1 = signkeys_current_kid(kr), *kid2 = NULL, *err = NULL;
    signkeys_free(kr);
    /* Rotated long enough ago that nothing signed with kid1 can still be valid. */
    time_t then = time(NULL) - SIGNKEYS_TOKEN_LIFETIME - SIGNKEYS_CLOCK_SKEW - 10;
    assert_int_equal(signkeys_rotate(dir, then, &kid2, &err), 0);
    char *f1 = key_file(dir, kid1);
    assert_true(exists(f1)); /* still inside its window at the rotation's time */
    kr = open_ok(dir);
    assert_false(exists(f1));
    json_t *jwks = signkeys_jwks(kr, then);
    assert_int_equal(jwks_count(jwks), 1);
    assert_string_equal(jwks_kid_at(jwks, 0), kid2);
    json_decref(jwks);
    signkeys_free(kr);
    /* The manifest no longer names it, so no reader looks for the file. */
    char *manifest = xasprintf("%s/%s/%s", dir, SIGNKEYS_DIR, SIGNKEYS_MANIFEST_FILE);
    char *text = read_file(manifest, 65536, NULL);
    assert_non_null(text);
    assert_null(strstr(text, kid1));
    assert_non_null(strstr(text, kid2));
    free(text);
    free(manifest);
    signkeys_free(open_ok(dir));
    free(f1);
    free(kid1);
    free(kid2);
    rm_rf(dir);
}

struct opener {
    const char *dir;
    char *kid;
};

static void *open_thread(void *arg)
{
    struct opener *o = arg;
    char *err = NULL;
    struct signkeys *kr = signkeys_open(o->dir, &err);
    if (kr != NULL) {
        o->kid = signkeys_current_kid(kr);
        signkeys_free(kr);
    }
    free(err);
    return NULL;
}

static void test_concurrent_first_starts_agree(void **state)
{
    (void)state;
    char *dir = tmpdir();
    char *state_dir = xasprintf("%s/state", dir); /* not even the state dir exists yet */
    struct opener o[4];
    pthread_t t[4];
    for (size_t i = 0; i < 4; i++) {
        o[i] = (struct opener){state_dir, NULL};
        assert_int_equal(pthread_create(&t[i], NULL, open_thread, &o[i]), 0);
    }
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    for (size_t i = 0; i < 4; i++) {
        assert_non_null(o[i].kid);
        assert_string_equal(o[i].kid, o[0].kid);
    }
    for (size_t i = 0; i < 4; i++)
        free(o[i].kid);
    /* One key file, the manifest, the lock. */
    assert_int_equal(dir_entries(state_dir), 3);
    free(state_dir);
    rm_rf(dir);
}

struct signer {
    struct signkeys *kr;
    time_t now;
    char *jwts[200];
};

static void *sign_thread(void *arg)
{
    struct signer *s = arg;
    for (size_t i = 0; i < ARRAY_LEN(s->jwts); i++) {
        char *err = NULL;
        if (signkeys_reload(s->kr, &err) != 0)
            free(err);
        s->jwts[i] = NULL;
        (void)signkeys_sign_callback(s->kr, ISSUER, AUDIENCE, (const unsigned char *)"abc", 3,
                                     s->now, &s->jwts[i]);
    }
    return NULL;
}

static void test_signing_from_threads_during_rotations(void **state)
{
    (void)state;
    char *dir = tmpdir();
    struct signkeys *kr = open_ok(dir);
    time_t now = time(NULL);
    struct signer s[3];
    pthread_t t[3];
    for (size_t i = 0; i < 3; i++) {
        s[i].kr = kr;
        s[i].now = now;
        assert_int_equal(pthread_create(&t[i], NULL, sign_thread, &s[i]), 0);
    }
    for (int r = 0; r < 4; r++) {
        char *err = NULL;
        assert_int_equal(signkeys_rotate(dir, now, NULL, &err), 0);
        usleep(2000);
    }
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    char *err = NULL;
    assert_int_equal(signkeys_reload(kr, &err), 0);
    /* Every signature made in the meantime verifies from the final JWKS (all keys are inside
     * their window), whichever key it was made with. */
    json_t *jwks = signkeys_jwks(kr, now);
    assert_int_equal(jwks_count(jwks), 5);
    for (size_t i = 0; i < 3; i++)
        for (size_t j = 0; j < ARRAY_LEN(s[i].jwts); j++) {
            assert_non_null(s[i].jwts[j]);
            json_decref(verify_via_jwks(jwks, s[i].jwts[j], NULL));
            free(s[i].jwts[j]);
        }
    json_decref(jwks);
    signkeys_free(kr);
    rm_rf(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_open_creates_private_files_and_keeps_the_key),
        cmocka_unit_test(test_signature_verifies_with_jwks_and_binds_the_body),
        cmocka_unit_test(test_rotation_publishes_old_key_for_its_window),
        cmocka_unit_test(test_reload_reads_only_when_the_manifest_changed),
        cmocka_unit_test(test_damaged_state_is_an_error_not_a_new_key),
        cmocka_unit_test(test_unnamed_files_are_removed),
        cmocka_unit_test(test_open_deletes_keys_past_their_window),
        cmocka_unit_test(test_concurrent_first_starts_agree),
        cmocka_unit_test(test_signing_from_threads_during_rotations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
