/* Unit tests for seal: what encryption at rest promises a user — values round-trip, a value
 * cannot be moved to another row or altered undetected, rotation never strands a stored value,
 * and key files are created private and refused when they are not. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <dirent.h>

#include "seal.h"
#include "util.h"

#define HEX_KEY_A "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
/* The same 32 bytes in base64, standard and URL-safe unpadded. */
#define B64_KEY_A "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define HEX_KEY_B "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"

static const char *const AAD = "authproxy/v1/workspace/w1/secret/OPENAI_API_KEY";
static const char *const PT = "sk-proj-very-secret-value-0123456789";

static struct seal_keyring *kr_from(const char *keys)
{
    char *err = NULL;
    struct seal_keyring *kr = seal_keyring_from_string(keys, &err);
    if (kr == NULL)
        fail_msg("keyring: %s", err);
    return kr;
}

/* A fresh temporary directory; the caller removes it with rm_rf. */
static char *tmpdir(void)
{
    char *d = strdup("/tmp/test_seal.XXXXXX");
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

static void seal_text_ok(const struct seal_keyring *kr, const char *pt, const char *aad, char **out)
{
    assert_int_equal(seal_seal_text(kr, pt, aad, out), SEAL_OK);
}

static void test_round_trip(void **state)
{
    (void)state;
    struct seal_keyring *kr = kr_from(HEX_KEY_A);
    uint8_t *blob, *pt;
    size_t blob_len, pt_len;
    assert_int_equal(seal_seal(kr, PT, strlen(PT), AAD, &blob, &blob_len), SEAL_OK);
    assert_int_equal(blob_len, strlen(PT) + SEAL_OVERHEAD);
    assert_int_equal(blob[0], SEAL_VERSION);
    assert_int_equal(seal_unseal(kr, blob, blob_len, AAD, &pt, &pt_len), SEAL_OK);
    assert_int_equal(pt_len, strlen(PT));
    assert_memory_equal(pt, PT, pt_len);
    seal_plaintext_free(pt, pt_len);
    free(blob);

    /* Text form, and the empty value. */
    char *sealed, *back;
    seal_text_ok(kr, PT, AAD, &sealed);
    assert_true(seal_is_sealed_text(sealed));
    assert_int_equal(seal_unseal_text(kr, sealed, AAD, &back), SEAL_OK);
    assert_string_equal(back, PT);
    secret_free(back);
    free(sealed);
    seal_text_ok(kr, "", AAD, &sealed);
    assert_int_equal(seal_unseal_text(kr, sealed, AAD, &back), SEAL_OK);
    assert_string_equal(back, "");
    secret_free(back);
    free(sealed);
    seal_keyring_free(kr);
}

/* Two seals of one value differ (random nonce), so equal secrets are not visible as equal. */
static void test_nonce_is_fresh(void **state)
{
    (void)state;
    struct seal_keyring *kr = kr_from(HEX_KEY_A);
    char *a, *b;
    seal_text_ok(kr, PT, AAD, &a);
    seal_text_ok(kr, PT, AAD, &b);
    assert_string_not_equal(a, b);
    free(a);
    free(b);
    seal_keyring_free(kr);
}

/* A value bound to one row does not unseal as another row's (a swapped ciphertext). */
static void test_wrong_aad_fails(void **state)
{
    (void)state;
    struct seal_keyring *kr = kr_from(HEX_KEY_A);
    char *sealed, *out = NULL;
    seal_text_ok(kr, PT, AAD, &sealed);
    assert_int_equal(
        seal_unseal_text(kr, sealed, "authproxy/v1/workspace/w2/secret/OPENAI_API_KEY", &out),
        SEAL_ERR_AUTH);
    assert_int_equal(seal_unseal_text(kr, sealed, NULL, &out), SEAL_ERR_AUTH);
    assert_null(out);
    free(sealed);
    /* NULL aad and "" are the same binding. */
    seal_text_ok(kr, PT, NULL, &sealed);
    assert_int_equal(seal_unseal_text(kr, sealed, "", &out), SEAL_OK);
    secret_free(out);
    free(sealed);
    seal_keyring_free(kr);
}

/* Flipping any bit of the header, nonce, ciphertext or tag is detected. */
static void test_tampering_fails(void **state)
{
    (void)state;
    struct seal_keyring *kr = kr_from(HEX_KEY_A);
    uint8_t *blob, *pt = NULL;
    size_t blob_len, pt_len;
    assert_int_equal(seal_seal(kr, PT, strlen(PT), AAD, &blob, &blob_len), SEAL_OK);
    for (size_t i = 0; i < blob_len; i++) {
        blob[i] ^= 0x01;
        int rc = seal_unseal(kr, blob, blob_len, AAD, &pt, &pt_len);
        if (i == 0)
            assert_int_equal(rc, SEAL_ERR_FORMAT); /* version */
        else if (i < 1 + SEAL_KEY_ID_LEN)
            assert_int_equal(rc, SEAL_ERR_UNKNOWN_KEY); /* key id */
        else
            assert_int_equal(rc, SEAL_ERR_AUTH); /* nonce, ciphertext, tag */
        assert_null(pt);
        blob[i] ^= 0x01;
    }
    /* Truncation, including losing the whole tag. */
    assert_int_equal(seal_unseal(kr, blob, blob_len - 1, AAD, &pt, &pt_len), SEAL_ERR_AUTH);
    assert_int_equal(seal_unseal(kr, blob, SEAL_OVERHEAD - 1, AAD, &pt, &pt_len), SEAL_ERR_FORMAT);
    free(blob);

    char *out = NULL;
    assert_int_equal(seal_unseal_text(kr, "not sealed", AAD, &out), SEAL_ERR_FORMAT);
    assert_int_equal(seal_unseal_text(kr, SEAL_TEXT_PREFIX "!!!!", AAD, &out), SEAL_ERR_FORMAT);
    assert_int_equal(seal_unseal_text(kr, SEAL_TEXT_PREFIX, AAD, &out), SEAL_ERR_FORMAT);
    assert_null(out);
    seal_keyring_free(kr);
}

static void test_unknown_key_fails(void **state)
{
    (void)state;
    struct seal_keyring *a = kr_from(HEX_KEY_A), *b = kr_from(HEX_KEY_B);
    char *sealed, *out = NULL, id[SEAL_KEY_ID_HEX_LEN + 1];
    seal_text_ok(a, PT, AAD, &sealed);
    assert_int_equal(seal_unseal_text(b, sealed, AAD, &out), SEAL_ERR_UNKNOWN_KEY);
    assert_null(out);
    assert_int_equal(seal_text_key_id(sealed, id), SEAL_OK);
    assert_string_equal(id, seal_keyring_current_id(a));
    assert_false(seal_keyring_has(b, id));
    free(sealed);
    seal_keyring_free(a);
    seal_keyring_free(b);
}

/* The sealed bytes (binary and text) never contain the plaintext. */
static void test_ciphertext_hides_plaintext(void **state)
{
    (void)state;
    struct seal_keyring *kr = kr_from(HEX_KEY_A);
    uint8_t *blob;
    size_t blob_len;
    assert_int_equal(seal_seal(kr, PT, strlen(PT), AAD, &blob, &blob_len), SEAL_OK);
    assert_null(memmem(blob, blob_len, PT, strlen(PT)));
    assert_null(memmem(blob, blob_len, "sk-proj", 7));
    free(blob);
    char *sealed;
    seal_text_ok(kr, PT, AAD, &sealed);
    assert_null(strstr(sealed, "sk-proj"));
    free(sealed);
    seal_keyring_free(kr);
}

/* Hex, base64 and URL-safe base64 spell the same key; several keys are comma-separated with
 * the current first; a bad key is refused without echoing it. */
static void test_key_syntax(void **state)
{
    (void)state;
    struct seal_keyring *hex = kr_from(HEX_KEY_A), *b64 = kr_from(B64_KEY_A);
    struct seal_keyring *url = kr_from("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8");
    assert_string_equal(seal_keyring_current_id(hex), seal_keyring_current_id(b64));
    assert_string_equal(seal_keyring_current_id(hex), seal_keyring_current_id(url));
    assert_int_equal(strlen(seal_keyring_current_id(hex)), SEAL_KEY_ID_HEX_LEN);
    char *sealed, *out;
    seal_text_ok(hex, PT, AAD, &sealed);
    assert_int_equal(seal_unseal_text(b64, sealed, AAD, &out), SEAL_OK);
    secret_free(out);
    free(sealed);

    struct seal_keyring *two = kr_from(" " HEX_KEY_B " , " HEX_KEY_A " ");
    assert_int_equal(seal_keyring_count(two), 2);
    assert_string_not_equal(seal_keyring_current_id(two), seal_keyring_current_id(hex));
    assert_string_equal(seal_keyring_id_at(two, 1), seal_keyring_current_id(hex));
    assert_null(seal_keyring_path(two));
    /* A keyring given as a string cannot be rotated in place. */
    char *err = NULL;
    assert_int_equal(seal_keyring_rotate(two, &err), -1);
    assert_non_null(strstr(err, SEAL_ENV_VAR));
    free(err);
    err = NULL;

    const char *bad = "00112233445566778899aabbccddeeff00112233445566778899aabbccddee"; /* 31 B */
    assert_null(seal_keyring_from_string(bad, &err));
    assert_non_null(err);
    assert_null(strstr(err, "00112233"));
    free(err);
    err = NULL;
    assert_null(seal_keyring_from_string("", &err));
    free(err);
    seal_keyring_free(hex);
    seal_keyring_free(b64);
    seal_keyring_free(url);
    seal_keyring_free(two);
}

static mode_t file_mode(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_mode & 07777;
}

/* First use creates <state>/master.key mode 0600 (and the state dir); reopening finds the same
 * key; a group- or world-readable key file is refused. */
static void test_key_file_created_private(void **state)
{
    (void)state;
    unsetenv(SEAL_ENV_VAR);
    char *dir = tmpdir();
    char *state_dir = xasprintf("%s/var/authproxy", dir);
    char *path = xasprintf("%s/%s", state_dir, SEAL_KEYRING_FILE);
    char *err = NULL;
    struct seal_keyring *kr = seal_keyring_open(state_dir, NULL, &err);
    assert_non_null(kr);
    assert_int_equal(file_mode(path), 0600);
    assert_int_equal(file_mode(state_dir), 0700);
    assert_string_equal(seal_keyring_path(kr), path);
    char *sealed;
    seal_text_ok(kr, PT, AAD, &sealed);

    struct seal_keyring *again = seal_keyring_open(state_dir, NULL, &err);
    assert_non_null(again);
    assert_string_equal(seal_keyring_current_id(again), seal_keyring_current_id(kr));
    seal_keyring_free(again);

    /* The file holds the key in text, not the plaintext of anything. */
    size_t len;
    char *text = read_file(path, 65536, &len);
    assert_non_null(text);
    assert_non_null(strstr(text, seal_keyring_current_id(kr)));
    secret_free(text);

    assert_int_equal(chmod(path, 0644), 0);
    assert_null(seal_keyring_open(state_dir, NULL, &err));
    assert_non_null(strstr(err, "0644"));
    assert_non_null(strstr(err, path));
    free(err);
    err = NULL;
    assert_int_equal(chmod(path, 0640), 0);
    assert_null(seal_keyring_open(state_dir, NULL, &err));
    free(err);
    err = NULL;
    /* The environment variable takes precedence over the state dir. */
    assert_int_equal(chmod(path, 0600), 0);
    setenv(SEAL_ENV_VAR, HEX_KEY_B, 1);
    struct seal_keyring *env = seal_keyring_open(state_dir, NULL, &err);
    unsetenv(SEAL_ENV_VAR);
    assert_non_null(env);
    assert_string_not_equal(seal_keyring_current_id(env), seal_keyring_current_id(kr));
    char *out = NULL;
    assert_int_equal(seal_unseal_text(env, sealed, AAD, &out), SEAL_ERR_UNKNOWN_KEY);
    seal_keyring_free(env);
    free(sealed);
    seal_keyring_free(kr);
    free(path);
    free(state_dir);
    rm_rf(dir);
}

/* A key file given by path: raw 32 bytes accepted; a missing file is an error, not created. */
static void test_key_file_by_path(void **state)
{
    (void)state;
    unsetenv(SEAL_ENV_VAR);
    char *dir = tmpdir();
    char *path = xasprintf("%s/raw.key", dir), *err = NULL;
    assert_null(seal_keyring_open(dir, path, &err));
    assert_non_null(strstr(err, "raw.key"));
    free(err);
    err = NULL;
    assert_int_equal(access(path, F_OK), -1);

    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    for (int i = 0; i < 32; i++)
        fputc(i, f); /* the bytes of HEX_KEY_A */
    fclose(f);
    assert_int_equal(chmod(path, 0600), 0);
    struct seal_keyring *kr = seal_keyring_open(dir, path, &err);
    assert_non_null(kr);
    struct seal_keyring *hex = kr_from(HEX_KEY_A);
    assert_string_equal(seal_keyring_current_id(kr), seal_keyring_current_id(hex));
    seal_keyring_free(hex);
    seal_keyring_free(kr);
    free(path);
    rm_rf(dir);
}

/* Rotation: values sealed with k1 still unseal after rotating to k2, new seals use k2, another
 * process's view of the file holds both, and retiring k1 is what finally strands old values. */
static void test_rotation(void **state)
{
    (void)state;
    unsetenv(SEAL_ENV_VAR);
    char *dir = tmpdir();
    char *path = xasprintf("%s/%s", dir, SEAL_KEYRING_FILE), *err = NULL;
    struct seal_keyring *kr = seal_keyring_open(dir, NULL, &err);
    assert_non_null(kr);
    char k1[SEAL_KEY_ID_HEX_LEN + 1], id[SEAL_KEY_ID_HEX_LEN + 1];
    strcpy(k1, seal_keyring_current_id(kr));
    char *old_sealed, *new_sealed, *out;
    seal_text_ok(kr, PT, AAD, &old_sealed);

    assert_int_equal(seal_keyring_rotate(kr, &err), 0);
    assert_int_equal(seal_keyring_count(kr), 2);
    assert_string_not_equal(seal_keyring_current_id(kr), k1);
    assert_string_equal(seal_keyring_id_at(kr, 1), k1);
    assert_int_equal(file_mode(path), 0600);
    assert_int_equal(seal_unseal_text(kr, old_sealed, AAD, &out), SEAL_OK);
    assert_string_equal(out, PT);
    secret_free(out);
    seal_text_ok(kr, PT, AAD, &new_sealed);
    assert_int_equal(seal_text_key_id(new_sealed, id), SEAL_OK);
    assert_string_equal(id, seal_keyring_current_id(kr));

    /* A second process (or a reload) sees the rotated file. */
    struct seal_keyring *other = seal_keyring_load_file(path, false, &err);
    assert_non_null(other);
    assert_string_equal(seal_keyring_current_id(other), seal_keyring_current_id(kr));
    assert_int_equal(seal_unseal_text(other, old_sealed, AAD, &out), SEAL_OK);
    secret_free(out);

    /* other rotates again behind kr's back: kr may not retire (it would drop the new key), and
     * a reload brings kr up to date without losing anything. */
    assert_int_equal(seal_keyring_rotate(other, &err), 0);
    assert_int_equal(seal_keyring_retire(kr, &err), -1);
    assert_non_null(strstr(err, "changed"));
    free(err);
    err = NULL;
    assert_int_equal(seal_keyring_reload(kr, &err), 0);
    assert_int_equal(seal_keyring_count(kr), 3);
    assert_string_equal(seal_keyring_current_id(kr), seal_keyring_current_id(other));
    assert_true(seal_keyring_has(kr, k1));

    assert_int_equal(seal_keyring_retire(kr, &err), 0);
    assert_int_equal(seal_keyring_count(kr), 1);
    assert_false(seal_keyring_has(kr, k1));
    assert_int_equal(seal_unseal_text(kr, old_sealed, AAD, &out), SEAL_ERR_UNKNOWN_KEY);
    assert_int_equal(seal_unseal_text(kr, new_sealed, AAD, &out), SEAL_ERR_UNKNOWN_KEY);
    assert_int_equal(file_mode(path), 0600);
    struct seal_keyring *after = seal_keyring_load_file(path, false, &err);
    assert_non_null(after);
    assert_int_equal(seal_keyring_count(after), 1);
    seal_keyring_free(after);
    /* No temporary copy of any key (a retired one included) is left beside the file. */
    DIR *d = opendir(dir);
    assert_non_null(d);
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (e->d_name[0] != '.')
            assert_true(strcmp(e->d_name, SEAL_KEYRING_FILE) == 0 ||
                        strcmp(e->d_name, SEAL_KEYRING_FILE ".lock") == 0);
    closedir(d);

    free(old_sealed);
    free(new_sealed);
    seal_keyring_free(other);
    seal_keyring_free(kr);
    free(path);
    rm_rf(dir);
}

/* A concurrent rotation by two handles loses neither new key (the file lock and merge). */
static void test_concurrent_rotations_keep_all_keys(void **state)
{
    (void)state;
    char *dir = tmpdir();
    char *path = xasprintf("%s/%s", dir, SEAL_KEYRING_FILE), *err = NULL;
    struct seal_keyring *a = seal_keyring_load_file(path, true, &err);
    struct seal_keyring *b = seal_keyring_load_file(path, true, &err);
    assert_non_null(a);
    assert_non_null(b);
    assert_string_equal(seal_keyring_current_id(a), seal_keyring_current_id(b));
    assert_int_equal(seal_keyring_rotate(a, &err), 0);
    assert_int_equal(seal_keyring_rotate(b, &err), 0);
    struct seal_keyring *disk = seal_keyring_load_file(path, false, &err);
    assert_non_null(disk);
    assert_int_equal(seal_keyring_count(disk), 3);
    assert_true(seal_keyring_has(disk, seal_keyring_current_id(a)));
    assert_true(seal_keyring_has(disk, seal_keyring_current_id(b)));
    seal_keyring_free(disk);
    seal_keyring_free(a);
    seal_keyring_free(b);
    free(path);
    rm_rf(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_nonce_is_fresh),
        cmocka_unit_test(test_wrong_aad_fails),
        cmocka_unit_test(test_tampering_fails),
        cmocka_unit_test(test_unknown_key_fails),
        cmocka_unit_test(test_ciphertext_hides_plaintext),
        cmocka_unit_test(test_key_syntax),
        cmocka_unit_test(test_key_file_created_private),
        cmocka_unit_test(test_key_file_by_path),
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_concurrent_rotations_keep_all_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
