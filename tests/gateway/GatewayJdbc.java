import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.Properties;

/**
 * A JDBC client through amber's gateway, run by test_clients.py: server-side prepared statements
 * (prepareThreshold=1), a refused write, a read after it, and a transaction. Prints one line per step for the
 * test to check. Arguments: the jdbc URL and the user (the grant id); the token comes in PGPASSWORD.
 */
public class GatewayJdbc {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", System.getenv("PGPASSWORD"));
        props.setProperty("sslmode", "require");
        props.setProperty("sslfactory", "org.postgresql.ssl.NonValidatingFactory");
        props.setProperty("prepareThreshold", "1");
        props.setProperty("ApplicationName", "amber-jdbc-test");
        try (Connection conn = DriverManager.getConnection(args[0], props)) {
            conn.setAutoCommit(true);
            String sql = "SELECT id, customer_id, total_cents FROM public.orders WHERE id <= ? ORDER BY id";
            try (PreparedStatement read = conn.prepareStatement(sql)) {
                for (int round = 1; round <= 3; round++) {
                    read.setLong(1, 2 + round);
                    System.out.println("read " + round + " " + rows(read));
                }
            }
            try (PreparedStatement write = conn.prepareStatement("UPDATE public.orders SET total_cents = ? WHERE id = ?")) {
                write.setLong(1, 0);
                write.setLong(2, 1);
                write.executeUpdate();
                System.out.println("write allowed");
            } catch (SQLException e) {
                System.out.println("write refused " + e.getSQLState() + " " + e.getMessage().split("\n")[0]);
            }
            try (PreparedStatement count = conn.prepareStatement("SELECT count(*), sum(total_cents) FROM public.orders")) {
                try (ResultSet rs = count.executeQuery()) {
                    rs.next();
                    System.out.println("after " + rs.getLong(1) + " " + rs.getLong(2));
                }
            }
            conn.setAutoCommit(false);
            try (PreparedStatement name = conn.prepareStatement("SELECT name FROM public.customers WHERE id = ?")) {
                name.setLong(1, 3);
                try (ResultSet rs = name.executeQuery()) {
                    rs.next();
                    System.out.println("transaction " + rs.getString(1));
                }
            }
            conn.commit();
            System.out.println("committed");
        }
    }

    private static String rows(PreparedStatement statement) throws SQLException {
        StringBuilder out = new StringBuilder();
        try (ResultSet rs = statement.executeQuery()) {
            while (rs.next()) {
                out.append(rs.getLong(1)).append(':').append(rs.getLong(2)).append(':').append(rs.getLong(3)).append(',');
            }
        }
        return out.toString();
    }
}
